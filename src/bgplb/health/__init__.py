"""bgplb.health"""
