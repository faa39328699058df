"""Provenance of results: the commit a run reports."""


def test_git_commit_prefers_the_environment(monkeypatch):
    from tokendyn.provenance import git_commit

    monkeypatch.setenv("TOKENDYN_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    assert git_commit() == "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.delenv("TOKENDYN_COMMIT")
    got = git_commit()
    assert got is None or len(got.removesuffix("+modified")) == 40


def test_git_commit_says_when_the_tree_differs_from_it(monkeypatch):
    """A tree copied over an older checkout (as on a benchmark machine) must not pass for that commit."""
    import subprocess
    from types import SimpleNamespace

    from tokendyn import provenance

    head = "ab" * 20
    for status, expect in (("", head), (" M tokendyn/x.py\n", head + "+modified")):
        def fake(args, status=status, **kw):
            return SimpleNamespace(returncode=0, stdout=head + "\n" if "rev-parse" in args else status)

        monkeypatch.setattr(subprocess, "run", fake)
        monkeypatch.delenv("TOKENDYN_COMMIT", raising=False)
        assert provenance.git_commit() == expect
