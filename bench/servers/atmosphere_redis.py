"""flask-atmosphere as ``atmosphere.py`` (a ``TextWireFormat`` relay), with
the Redis backplane: every broadcast goes through Redis, to the clients of
every process that shares it (this one's included).

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 python bench/servers/atmosphere_redis.py PORT

``BENCH_REDIS_URL`` is required: the same relay without a backplane is
``atmosphere.py``. ``python -m bench backplane`` starts its own redis-server
and sets it.
"""
import os
import runpy
import sys

if not os.environ.get("BENCH_REDIS_URL"):
    sys.exit("set BENCH_REDIS_URL to the Redis URL of the backplane (redis://HOST:PORT/DB)")
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "atmosphere.py"),
               run_name="__main__")
