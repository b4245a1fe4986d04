"""Worked examples of extending jaxnn (a model of your own: cnn_classifier.py)."""
