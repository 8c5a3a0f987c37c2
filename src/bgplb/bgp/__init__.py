"""bgplb.bgp"""
