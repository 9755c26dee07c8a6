"""The scheduler on a thread of its own, for clients that submit from other threads (the server,
`hymoe bench serve`). Sequences join and leave between steps; their events go back through each
sequence's callback, from the engine thread. KV memory is a pool of blocks
(`--kv-memory`, default: `max_batch` times the model's context) shared by up to `max_batch` rows;
past `max_queue` waiting sequences a submit is refused (QueueFull).
"""
from __future__ import annotations

import logging
import threading

from hymoe.engine.scheduler import Scheduler
from hymoe.engine.sequence import Sequence
from hymoe.errors import HymoeError

log = logging.getLogger("hymoe")


class QueueFull(HymoeError):
    pass


class EngineThread:
    def __init__(self, llm, max_batch: int = 8, max_queue: int = 64):
        if llm.tokenizer is None:
            raise HymoeError("serving needs a tokenizer, and this model has none")
        self.llm, self.max_batch, self.max_queue = llm, max_batch, max_queue
        self.scheduler = Scheduler(llm.pool_runner(max_batch), llm.prefill_chunk)
        self.inbox: list[Sequence] = []  # submitted, not yet handed to the scheduler (which only this thread touches)
        self.lock = threading.Condition()
        self.stopped = False
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name="hymoe-engine", daemon=True)
        self.thread.start()

    def submit(self, *seqs: Sequence) -> None:
        """Queue seqs (one request's: n choices, several prompts) all together, or none of them."""
        for seq in seqs:
            self.llm.check_prompt(seq.prompt)
        with self.lock:
            # waiting: submitted and not running, less those about to take a free row
            queued = len(self.inbox) + len(self.scheduler.waiting) - len(self.scheduler.free)
            if queued + len(seqs) - 1 >= self.max_queue:
                raise QueueFull(f"{queued} requests are waiting; try again shortly")
            self.inbox.extend(seqs)
            self.lock.notify()

    def cancel(self, seq: Sequence) -> None:
        seq.cancel()
        with self.lock:
            self.lock.notify()

    def close(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()
        self.thread.join(timeout=30)

    @property
    def load(self) -> dict:
        """Read from other threads without the lock: counts of a moment, for health and metrics.
        kv_blocks_used: held by running sequences; kv_blocks_cached: kept only for prefix reuse."""
        blocks, running = self.scheduler.blocks, list(self.scheduler.running)
        cached = len(blocks.idle)
        return {"active": len(running), "waiting": len(self.scheduler.waiting) + len(self.inbox),
                "slots": self.max_batch, "kv_blocks_total": blocks.num_blocks,
                "kv_blocks_used": blocks.num_blocks - len(blocks.free) - cached, "kv_blocks_cached": cached,
                "kv_block_size": blocks.block_size, "kv_positions_used": sum(s.cached for s in running)}

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.stopped and not self.inbox and not self.scheduler.has_work:
                    self.lock.wait()
                if self.stopped:
                    break
                for seq in self.inbox:
                    self.scheduler.add(seq)
                self.inbox.clear()
            try:
                self.steps += 1
                self.scheduler.step()
            except Exception as e:  # a bug must not take the server down: fail the live sequences
                log.exception("hymoe: engine step failed")
                for seq in list(self.scheduler.running):
                    seq.fail(f"internal error: {e}")
                    self.scheduler.abort(seq)
