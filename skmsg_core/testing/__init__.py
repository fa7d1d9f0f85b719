"""Testing helpers shipped with skmsg (as trio ships ``trio.testing``)."""
