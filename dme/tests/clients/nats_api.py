"""A NATS user of dme who has only nats-py and JSON: what `nats req`, `nats object put`,
`nats sub` and `nats micro` do, done with a client that is not dme's code.

Usage: nats_api.py NATS_URL FIRST.wav SECOND.wav [--no-admin]
Prints one JSON object (what it saw) on stdout; exits non-zero on the first surprise. With
--no-admin (the job submitter's NATS user) deleting a song and resetting must be refused.
"""

import asyncio
import json
import sys

import nats
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

# A hang guard, not a timed assertion: a short song separates in seconds.
DEADLINE_S = 240.0


def fail(why):
    print(f"nats_api.py: {why}", file=sys.stderr)
    sys.exit(1)


async def request(nc, subject, body=b"", headers=None):
    """A request; its JSON answer, or (code, message) for a micro-service error."""
    msg = await nc.request(subject, body, timeout=60, headers=headers)
    h = msg.headers or {}
    if "Nats-Service-Error-Code" in h:
        return int(h["Nats-Service-Error-Code"]), h.get("Nats-Service-Error", "")
    return json.loads(msg.data)


async def expect_error(nc, subject, body, code, words):
    got = await request(nc, subject, body)
    if not (isinstance(got, tuple) and got[0] == code and words in got[1]):
        fail(f"{subject} {body!r}: expected error {code} with {words!r}, got {got!r}")
    return {"subject": subject, "code": got[0], "message": got[1]}


async def main(url, first_path, second_path, admin=True):
    nc = await nats.connect(url)
    js = nc.jetstream()
    seen = {}

    # Discovery, as `nats micro ls` / `nats micro info dme-api` do.
    ping = json.loads((await nc.request("$SRV.PING.dme-api", b"", timeout=10)).data)
    info = json.loads((await nc.request("$SRV.INFO.dme-api", b"", timeout=10)).data)
    if ping.get("name") != "dme-api":
        fail(f"ping: {ping}")
    seen["endpoints"] = sorted(e["subject"] for e in info["endpoints"])

    # Every event, as `nats sub 'dme.api.event.>'` shows them.
    events = asyncio.Queue()

    async def on_event(msg):
        await events.put((msg.subject, json.loads(msg.data)))

    await nc.subscribe("dme.api.event.>", cb=on_event)

    first = open(first_path, "rb").read()
    song = await request(nc, "dme.api.music.upload", first, {"Dme-File-Name": "first song.wav"})
    if isinstance(song, tuple):
        fail(f"inline upload refused: {song}")
    music_id = song["music_id"]
    seen["uploaded"] = song
    names = [t["name"] for t in song["tracks"]]

    last_id = [0]

    async def until(what):
        """Events of this song until one satisfies `what`; returns their kinds and the last."""
        kinds = []
        while True:
            subject, data = await asyncio.wait_for(events.get(), DEADLINE_S)
            if data.get("music_id") != music_id:
                continue
            if subject != f"dme.api.event.{music_id}":
                fail(f"event of {music_id} on {subject}")
            # Copies come in the event stream's order.
            if data["id"] <= last_id[0]:
                fail(f"event {data['id']} after event {last_id[0]}")
            last_id[0] = data["id"]
            kinds.append(data["kind"])
            if data["state"] == "failed":
                fail(f"song failed: {data}")
            if what(data):
                return kinds, data

    kinds, ready = await until(lambda d: len(d["instruments"]) == len(names))
    seen["event_kinds_until_stems"] = kinds

    # Choose by stem name, with a gain, as the README's `nats req` does.
    keep = [names[0], names[-1]]
    selection = {"music_id": music_id, "tracks": [keep[0], {"track_id": keep[1], "gain_db": -3}]}
    seen["selected"] = await request(nc, "dme.api.music.select", json.dumps(selection).encode())
    if isinstance(seen["selected"], tuple):
        fail(f"select refused: {seen['selected']}")
    _, mixed = await until(lambda d: "final" in d)
    seen["final_event"] = mixed

    seen["get"] = await request(nc, "dme.api.music.get", json.dumps({"music_id": music_id}).encode())
    seen["list"] = await request(nc, "dme.api.music.list")
    seen["jobs"] = await request(nc, "dme.api.job.list")
    seen["job"] = await request(nc, "dme.api.job.get", json.dumps({"job_id": seen["jobs"][0]}).encode())

    # A file put in the uploads bucket, as `nats object put dme-uploads second.wav` does.
    uploads = await js.object_store("dme-uploads")
    await uploads.put("second.wav", open(second_path, "rb").read())
    second = await request(nc, "dme.api.music.upload", json.dumps({"object": "second.wav"}).encode())
    if isinstance(second, tuple):
        fail(f"object upload refused: {second}")
    seen["uploaded_object"] = second
    try:
        seen["object_left"] = [o.name for o in await uploads.list(ignore_deletes=True)]
    except NotFoundError:  # what nats-py says of an empty bucket
        seen["object_left"] = []
    delete = json.dumps({"music_id": second["music_id"]}).encode()
    if admin:
        seen["deleted"] = await request(nc, "dme.api.music.delete", delete)
    else:
        # A denied publish never reaches a responder: the request times out.
        for subject, body in [("dme.api.music.delete", delete), ("dme.api.reset", b"")]:
            try:
                await nc.request(subject, body, timeout=2)
                fail(f"{subject} was answered for a user without the right")
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                pass
        seen["admin_refused"] = True

    seen["errors"] = [
        await expect_error(nc, "dme.api.music.get", b'{"music_id": 999}', 404, "no music with id 999"),
        await expect_error(nc, "dme.api.music.get", b"[]", 400, "the body must be"),
        await expect_error(nc, "dme.api.music.upload", b"not audio at all", 415, ""),
        await expect_error(nc, "dme.api.music.upload", b'{"object": "missing.wav"}', 404, "dme-uploads"),
        await expect_error(
            nc,
            "dme.api.music.select",
            json.dumps({"music_id": music_id, "tracks": ["kazoo"]}).encode(),
            405,
            "no track named",
        ),
        await expect_error(nc, "dme.api.job.get", b'{"job_id": "x"}', 400, "malformed job id"),
        await expect_error(
            nc,
            "dme.api.music.select",
            json.dumps({"music_id": music_id, "tracks": [names[0]] * 20000}).encode(),
            413,
            "at most 65536 bytes",
        ),
        await expect_error(
            nc, "dme.api.music.retry", json.dumps({"music_id": music_id}).encode(), 409, "only a failed song"
        ),
    ]
    try:
        await nc.request("dme.api.no.such", b"", timeout=5)
        fail("an unknown subject was answered")
    except NoRespondersError:
        pass

    stats = json.loads((await nc.request("$SRV.STATS.dme-api", b"", timeout=10)).data)
    seen["stats"] = {e["name"]: {"requests": e["num_requests"], "errors": e["num_errors"]} for e in stats["endpoints"]}
    await nc.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4], admin="--no-admin" not in sys.argv[4:]))
