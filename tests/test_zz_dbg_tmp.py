from test_browser_client import *

def test_dbg(live, open_page):
    transport = "websocket"
    server, atmosphere, seen, page, uuid = connect(live, open_page, transport)
    for n in range(2):
        atmosphere.broadcast("/live", f"m{n}")
    assert wait_messages(page, 2) == ["m0", "m1"]
    page.evaluate("swallow = true")
    for n in range(2, 5):
        atmosphere.broadcast("/live", f"m{n}")
    wait(page, "() => swallowed.join('').includes('m4')")
    print("swallowed", page.evaluate("swallowed"))
    page.evaluate("swallow = false; client._link.failed('cut by the test')")
    try:
        wait_messages(page, 5)
    finally:
        print(page.evaluate("messages"), page.evaluate("raw"), page.evaluate("log"))
        for r in seen.requests: print(r)
