"""Property test: what ``frame`` writes, a decoder written from the client's
algorithm (§3.2, JavaScript string semantics) reads back exactly, however the
stream is cut into chunks."""
from hypothesis import given
from hypothesis import strategies as st

from flask_atmosphere.protocol import frame


class JsString:
    """A JavaScript string: a sequence of UTF-16 code units."""

    def __init__(self, units: list[int]):
        self.units = units

    @classmethod
    def of(cls, text: str) -> "JsString":
        data = text.encode("utf-16-le", "surrogatepass")
        return cls([int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data), 2)])

    def __str__(self) -> str:
        data = b"".join(unit.to_bytes(2, "little") for unit in self.units)
        return data.decode("utf-16-le", "surrogatepass")


def decode_stream(chunks: list[str]) -> list[str]:
    """The length-tracking parser of both Atmosphere clients: ``partial +
    chunk``, then ``<n>|<n code units>`` while complete, the rest kept."""
    partial: list[int] = []
    out: list[str] = []
    pipe = ord("|")
    for chunk in chunks:
        data = partial + JsString.of(chunk).units
        while pipe in data:
            i = data.index(pipe)
            n = int(str(JsString(data[:i])))
            if i + 1 + n > len(data):
                break
            out.append(str(JsString(data[i + 1:i + 1 + n])))
            data = data[i + 1 + n:]
        partial = data
    assert not partial, f"left over: {str(JsString(partial))!r}"
    return out


messages = st.lists(st.text(min_size=1, alphabet=st.characters(exclude_categories=("Cs",))),
                    min_size=1, max_size=20)


@given(messages, st.data())
def test_framed_messages_decode_exactly_whatever_the_chunking(texts, data):
    stream = "".join(frame(text, True) for text in texts)
    # Cut between code points (the transports send whole UTF-8 characters;
    # the browser's decoder never splits one).
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)))))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)]) if stream[a:b]]
    assert decode_stream(chunks) == texts
