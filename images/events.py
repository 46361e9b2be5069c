"""Publish-subscribe for QMP-shaped events.

An event is the dict a QMP server sends: ``{"event", "data", "timestamp":
{"seconds", "microseconds"}}``.  Jobs publish; monitors, QMP clients and tests
subscribe.  Subscribers are called in the publishing thread and must not block.
"""
import threading
import time


def qmp_timestamp(now: float) -> dict:
    seconds = int(now)
    return {"seconds": seconds, "microseconds": int(round((now - seconds) * 1e6)) % 1000000}


class EventBus:
    def __init__(self, clock=time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._subscribers = []

    def subscribe(self, callback):
        """Call ``callback(event_dict)`` for every event from now on; returns an unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def publish(self, name: str, data: dict) -> dict:
        event = {"event": name, "data": data, "timestamp": qmp_timestamp(self._clock())}
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)
        return event
