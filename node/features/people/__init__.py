"""The people of a node: roles and the one permission decision (roles.py), sign-in rules (accounts.py),
users and sessions in the store (users.py). The use cases are in node/app/people.py."""
