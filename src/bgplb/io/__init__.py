"""bgplb.io"""
