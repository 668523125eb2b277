"""A fault-injecting TCP proxy for scripts/soak (Python 3 stdlib only).

It sits between the farm and the provider's token endpoint on loopback and
plays the network of a bad night, switched at run time with `set`:

  pass     bytes go through untouched
  refuse   nothing listens: connections are refused (open ones are cut)
  slow     each connection waits `latency_ms` before it is forwarded, every
           answer chunk too, and a share `cut` of the connections is cut
           when the answer starts (the provider did the work, the farm never
           hears of it: a rotated refresh token it cannot know)

The proxy runs its own asyncio loop in a daemon thread; `set` and `stop` may
be called from any thread.
"""

import asyncio
import random
import threading


class FaultProxy:
    def __init__(self, target_port, listen_port=0, seed=0, host="127.0.0.1"):
        self.host = host
        self.target_port = target_port
        self.port = listen_port
        self.mode = "pass"
        self.latency = 0.0
        self.cut = 0.0
        self.rng = random.Random(seed)
        self.stats = {"connections": 0, "cut": 0, "upstream_refused": 0}
        self._server = None
        self._open = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)

    # ------------------------------------------------------------ control
    def start(self):
        self._thread.start()
        self._call(self._listen())
        return self

    def set(self, mode, latency_ms=0, cut=0.0):
        if mode not in ("pass", "refuse", "slow"):
            raise ValueError(f"unknown mode {mode!r}")
        self._call(self._set(mode, latency_ms / 1000.0, cut))

    def stop(self):
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ------------------------------------------------------------ inside the loop
    async def _listen(self):
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self, cut_open):
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if cut_open:
            for w in list(self._open):
                w.transport.abort()

    async def _shutdown(self):
        """Closes everything and lets the connections' tasks end (their
        sockets are aborted, so their reads return), so none is left pending
        when the loop stops. Not cancelled: Python 3.11's streams log a
        cancelled connection task as an error."""
        await self._close(cut_open=True)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    async def _set(self, mode, latency, cut):
        self.mode, self.latency, self.cut = mode, latency, cut
        if mode == "refuse":
            await self._close(cut_open=True)
        else:
            await self._listen()

    async def _handle(self, reader, writer):
        self.stats["connections"] += 1
        self._open.add(writer)
        upstream = None
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            try:
                ur, uw = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                self.stats["upstream_refused"] += 1
                writer.transport.abort()
                return
            upstream = uw
            self._open.add(uw)
            cut_this = self.cut > 0 and self.rng.random() < self.cut

            async def pump(src, dst, answer):
                try:
                    while True:
                        data = await src.read(65536)
                        if not data:
                            break
                        if answer and self.latency:
                            await asyncio.sleep(self.latency)
                        if answer and cut_this:
                            self.stats["cut"] += 1
                            writer.transport.abort()
                            uw.transport.abort()
                            return
                        dst.write(data)
                        await dst.drain()
                    if dst.can_write_eof():
                        dst.write_eof()
                except (OSError, asyncio.IncompleteReadError):
                    writer.transport.abort()
                    uw.transport.abort()

            await asyncio.gather(pump(reader, uw, False), pump(ur, writer, True))
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._open.discard(w)
                    w.close()
