"""Wait for a skewless server, ask it for a batch forecast, print it as a table (make demo).

python scripts/ask_server.py URL TIME_POINT ENTITY [ENTITY ...]
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request


def wait_until_alive(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"no server answered at {url} within {seconds:.0f} s")
            time.sleep(0.5)


def main(url: str, time_point: str, entities: list[str]) -> None:
    wait_until_alive(url)
    body = json.dumps({"entities": [int(e) for e in entities], "time_point": time_point})
    request = urllib.request.Request(
        f"{url}/predict/feast/batch", body.encode(), {"Content-Type": "application/json"}
    )
    try:
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    except urllib.error.HTTPError as exc:
        sys.exit(f"{exc.code}: {exc.read().decode()}")
    model = answer["model"]
    served = f"{model['name']} version {model['version']} (@{model['alias']})"
    print(f"POST {url}/predict/feast/batch, served by {served}")
    for item in answer["predictions"]:
        if item.get("error"):
            print(f"entity {item['entity']}: {item['error']}")
            continue
        for target, values in item["forecast"].items():
            lower, upper = item["lower"][target]["80"], item["upper"][target]["80"]
            print(f"entity {item['entity']}, {target} (80 % interval):")
            rows = zip(item["timestamps"], values, lower, upper, strict=True)
            for when, value, low, high in rows:
                print(f"  {when}  {value:8.3f}  [{low:8.3f}, {high:8.3f}]")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
