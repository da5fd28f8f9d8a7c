"""The input model: a run folder read without leaving it, its ordered manifest, what is left out,
when it is finished."""

__all__: list[str] = []
