"""bgplb.lab"""
