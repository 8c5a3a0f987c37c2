"""bgplb.agent"""
