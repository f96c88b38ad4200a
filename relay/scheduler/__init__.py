"""scheduler: due recipients claimed into a bounded active set and handed to per-destination
delivery workers, at each destination's pace.
"""
