"""Fixtures for the crash and race tests: the tool's path and the outcome
tables, printed at the end of the run (and written as Markdown to the file
named by DCPP_RELIABILITY_TABLE, if set)."""
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Tables:
    """Rows of outcome counts, one table per kind of test."""

    def __init__(self):
        self.tables = {}  # title -> (columns, {case: {column: value}})

    def add(self, title, columns, case, values):
        cols, rows = self.tables.setdefault(title, (list(columns), {}))
        row = rows.setdefault(case, {})
        for k, v in values.items():
            row[k] = v

    def count(self, title, columns, case, increments):
        """Adds `increments` to the row's numbers (rows several tests share)."""
        cols, rows = self.tables.setdefault(title, (list(columns), {}))
        row = rows.setdefault(case, {})
        for k, v in increments.items():
            row[k] = row.get(k, 0) + v

    def markdown(self):
        out = []
        for title, (cols, rows) in self.tables.items():
            out.append(f"{title}\n")
            out.append("| case | " + " | ".join(cols) + " |")
            out.append("|---|" + "---:|" * len(cols))
            for case, row in rows.items():
                out.append(f"| {case} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
            out.append("")
        return "\n".join(out)


def pytest_configure(config):
    config.reliability_tables = Tables()


@pytest.fixture(scope="session")
def tables(request):
    return request.config.reliability_tables


@pytest.fixture(scope="session")
def tool():
    path = os.environ.get("DCPP_CRASH_TOOL")
    if path:
        return path
    for build in ("build", "build-asan"):
        p = os.path.join(ROOT, build, "tests", "reliability", "dcpp_crash_tool")
        if os.path.exists(p):
            return p
    pytest.skip("dcpp_crash_tool not built: set DCPP_CRASH_TOOL or build into build/")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    text = config.reliability_tables.markdown()
    if not text:
        return
    terminalreporter.write_sep("=", "crash and race outcomes")
    terminalreporter.write_line(text)
    path = os.environ.get("DCPP_RELIABILITY_TABLE")
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
