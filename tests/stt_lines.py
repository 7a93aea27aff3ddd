"""What the scripted user says to the speech recognizer in the STT tests and bench.stt_latency.

Short answers ("Yes.", "No, thanks."), everyday questions of 1–3 s, two of 8–10 s (close to the
short decoding window), and one of ~15 s (longer than it).
"""

from __future__ import annotations

__all__ = ["LONG_LINE", "USER_LINES"]

USER_LINES = [
    "Yes.",
    "No, thanks.",
    "Stop.",
    "What time is it?",
    "How many days are in a week?",
    "Which season comes after winter?",
    "Could you repeat that more slowly?",
    "Thank you, that is all for today.",
    "Can you tell me the weather in Paris tomorrow morning?",
    "I would like to book a table for four people tonight at eight, please.",
    "Hi, I need some help with my internet connection, because it keeps dropping every few "
    "minutes in the evening, and I already restarted the router twice today without any luck.",
    "When I called yesterday, the person on the phone said that my order had already left the "
    "warehouse, but the tracking page still says that it is waiting to be packed, so which one "
    "is true?",
]

LONG_LINE = (
    "My daughter starts school next month and we still have not received the list of books and "
    "supplies she needs. The school office told us to call you, because you handle the orders "
    "for the whole district. Can you tell me when the list will be sent, and whether we can "
    "pick everything up in person instead of waiting for a delivery?"
)
