"""bgplb.linux"""
