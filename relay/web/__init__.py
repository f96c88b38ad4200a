"""web: the admin listener: the admin API's routes (admin), the operator's console (console),
the gate every request passes (gate) and the app that puts them together (app).
"""
