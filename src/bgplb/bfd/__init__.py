"""bgplb.bfd"""
