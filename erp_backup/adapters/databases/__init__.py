"""adapters/databases"""
