"""Recognizer backends behind one protocol (see ``base``)."""
