"""The fault suite: each test injects one fault on loopback and states its pass criterion."""
