"""vigil.feedback → where each action is handled: SILENCE to every partition of
internal.conditions (each alert partition keeps its own silences), everything else to the
incident stage through internal.incident-feed.

Stateless: a record is forwarded, made durable, then acknowledged. After a crash a record
may be forwarded twice; silences are idempotent, and the incident stage drops repeats by
the key ``feedback/<partition>/<offset>`` (see agents/incidents.py).
"""

from __future__ import annotations

from typing import Any

from agents.ingest import DeadLetterBox, check, origin_of
from pipeline.app import Vigil
from pipeline.codec import CodecError, decode
from pipeline.envelope import wrap_encoded
from pipeline.ingest import Origin, dead_letter
from pipeline.selfmetrics import CONSUMED_MESSAGES
from pipeline.settings import Settings
from pipeline.silence import SilenceBook


def route(value: bytes | None, origin: Origin, settings: Settings
          ) -> tuple[list[tuple[str, bytes, bytes, int | None]], dict[str, Any] | None]:
    """The records one feedback message becomes (short topic, key, value, partition), or
    its dead letter; SILENCE goes to every partition of internal.conditions."""
    if value is None:
        return [], dead_letter(origin, b"", "undecodable", "Feedback: empty message")
    try:
        feedback = decode("Feedback", value)
        problem = check(settings, "Feedback", feedback)
        if problem is not None:
            return [], dead_letter(origin, value, *problem)
        if feedback["action"] == "SILENCE":
            SilenceBook().on_feedback(feedback)  # refuse bad matchers or times here, once
    except (CodecError, ValueError) as exc:
        reason = "undecodable" if isinstance(exc, CodecError) else "invalid"
        return [], dead_letter(origin, value, reason, str(exc))
    wrapped = wrap_encoded("Feedback", value)
    if feedback["action"] == "SILENCE":
        key = feedback["target_id"].encode()
        return [("internal.conditions", key, wrapped, p)
                for p in range(settings.partitions)], None
    key = f"feedback/{origin.partition}/{origin.offset}".encode()
    return [("internal.incident-feed", key, wrapped, None)], None


def register(vigil: Vigil) -> None:
    dead_letters = DeadLetterBox(vigil.outbox, vigil.database)

    @vigil.app.agent(vigil.topic("feedback"), name="feedback")
    async def feedback_agent(stream: Any) -> None:
        async for event in stream.events():  # acknowledged when the next one is asked for
            CONSUMED_MESSAGES.labels("feedback").inc()
            records, letter = route(event.value, origin_of(event, vigil.settings.partitions),
                                    vigil.settings)
            if letter is not None:
                dead_letters.add([letter])
                await dead_letters.write()
            for short, key, value, partition in records:
                vigil.outbox.add(short, key, value, partition)
            await vigil.outbox.flush()
