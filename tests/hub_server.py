"""A small Hub-compatible HTTP server for tests: the endpoints huggingface_hub calls to create a repo, commit
files (regular uploads), read revisions and download files. Repos live in memory; every commit is kept, so
older revisions stay downloadable. Run it in a thread with `HubServer()` as a context manager.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    summary: str


@dataclass
class Repo:
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.sha == sha), None)


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> Commit:
        content = json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())}).encode()
        sha = hashlib.sha1(content + summary.encode() + str(len(repo.commits)).encode()).hexdigest()
        commit = Commit(sha, files, summary)
        repo.commits.append(commit)
        repo.branches[branch] = sha
        return commit


class _Handler(BaseHTTPRequestHandler):
    state: HubState

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    # -- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _repo(self, repo_id: str) -> Repo | None:
        return self.state.repos.get(repo_id)

    # -- routes
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        path = unquote(urlparse(self.path).path)
        with self.state.lock:
            self.state.requests.append(f"{method} {path}")
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo()
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml()
        if method == "GET" and path == "/api/whoami-v2":
            return self._json(200, {"type": "user", "name": "tester", "orgs": [], "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, action = "/".join(parts[2:4]), parts[4] if len(parts) > 4 else None
            revision = "/".join(parts[5:]) if len(parts) > 5 else "main"
            if method == "POST" and action == "preupload":
                return self._preupload(repo_id)
            if method == "POST" and action == "commit":
                return self._commit(repo_id, revision)
            if method == "POST" and action == "branch":
                return self._branch(repo_id, revision)
            if method == "GET" and action in (None, "revision"):
                return self._info(repo_id, revision)
            if method == "GET" and action == "tree":
                return self._tree(repo_id, parts[5] if len(parts) > 5 else "main")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=method == "HEAD")
        self._error(404, "NotFound", f"no route for {method} {path}", head=method == "HEAD")

    def _create_repo(self) -> None:
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"/{repo_id}"})
            repo = self.state.repos[repo_id] = Repo()
            self.state.commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit")
        self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})

    def _validate_yaml(self) -> None:
        import yaml

        content = json.loads(self._body())["content"]
        try:
            metadata = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
        if not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str) -> None:
        if self._repo(repo_id) is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
        files = json.loads(self._body())["files"]
        self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def _commit(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.state.lock:
            parent = repo.resolve(revision)
            files = dict(parent.files) if parent else {}
            summary = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:
                    return self._error(400, "BadRequest", f"unsupported commit operation {key}")
            commit = self.state.commit(repo, revision, files, summary)
        host = self.headers["Host"]
        self._json(
            200,
            {
                "commitUrl": f"http://{host}/{repo_id}/commit/{commit.sha}",
                "commitOid": commit.sha,
                "pullRequestUrl": None,
            },
        )

    def _branch(self, repo_id: str, branch: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
        self._body()
        with self.state.lock:
            if branch in repo.branches:
                return self._error(409, "Conflict", f"branch {branch} already exists")
            repo.branches[branch] = repo.branches["main"]
        self._json(200, {})

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"revision {revision} not found")
        siblings = [{"rfilename": p, "size": len(b)} for p, b in sorted(commit.files.items())]
        modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit.sha,
                "siblings": siblings,
                "private": False,
                "tags": [],
                "lastModified": modified,
                "createdAt": modified,
                "downloads": 0,
                "likes": 0,
            },
        )

    def _tree(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if commit is None:
            return self._error(404, "RevisionNotFound", f"{repo_id}@{revision} not found")
        entries = [
            {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
            for p, b in sorted(commit.files.items())
        ]
        self._json(200, entries)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found", head=head)
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"revision {revision} not found", head=head)
        if filename not in commit.files:
            return self._error(404, "EntryNotFound", f"{filename} not found", head=head)
        content = commit.files[filename]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, content, headers, head=head)


class HubServer:
    """``with HubServer() as hub: os.environ["HF_ENDPOINT"] = hub.endpoint`` (for a child process)."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
