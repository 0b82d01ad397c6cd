"""Offline dataset builders (data/prepare_data.py, the embedded dataset): they write what data/'s loaders read."""
