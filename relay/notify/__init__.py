"""notify: telling applications what happened after the fact: webhooks from the events outbox,
and the pruner of finished mail's history.
"""
