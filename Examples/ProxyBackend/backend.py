# A WebSocket backend that resumes its conversations, for `switchboard proxy --resume-from
# first-message` (docs/proxy.md). Run: python3 backend.py [port]; needs `pip install websockets`.
import asyncio, sys, uuid, websockets

progress = {}  # conversation id -> last client number handled (keep it durable in production)

async def handler(ws):
    cid = ws.request.headers.get("X-Resume-Id") or str(uuid.uuid4())
    await ws.send(cid)                       # first message: the proxy keeps it as the resume id
    async for message in ws:
        n = int(message)
        if n <= progress.get(cid, 0):        # sent again after a reconnect: already handled
            continue
        progress[cid] = n
        await ws.send(f"handled {n}")

async def main(port):
    async with websockets.serve(handler, "127.0.0.1", port):
        await asyncio.Future()

asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9000))
