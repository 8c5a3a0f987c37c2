"""bgplb.router"""
