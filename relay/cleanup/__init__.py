"""cleanup: the one path every new message takes into the queue, from SMTP or HTTP: checks,
headers, composing the API's structured messages and rendering broadcast templates.
"""
