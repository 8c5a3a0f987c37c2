"""bgplb.control"""
