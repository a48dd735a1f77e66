"""Channels: turn platform input into thread events, and deliver back."""
