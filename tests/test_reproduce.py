"""Provenance of results: the commit a run reports."""


def test_git_commit_prefers_the_environment(monkeypatch):
    from tokendyn.provenance import git_commit

    monkeypatch.setenv("TOKENDYN_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    assert git_commit() == "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.delenv("TOKENDYN_COMMIT")
    got = git_commit()
    assert got is None or len(got) == 40
