"""Cases (办件) seen whole: the case index (index.py), one case's view and its 办理状态 (view.py), the list
query (query.py). Reads and projections only; node/app/cases.py is the use case layer above them."""
