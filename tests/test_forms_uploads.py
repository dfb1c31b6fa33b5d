"""Form fields and file uploads: typed fields, UploadFile, filename sanitising, spooling, closing after the
request, several files per field, invalid multipart and size limits (issue "Parameters, validation, uploads
and DI", points 5 and 6)."""

import tempfile
from typing import Optional

import httpx
import pytest

from tachyon_api import BackgroundTasks, Depends, File, Form, Query, Tachyon, UploadFile
from tachyon_api.testing import TachyonTestClient, create_client

from .conftest import assert_error_shape, assert_validation_error, serve

BOUNDARY = "----tachyonTestBoundary7MA4YWxk"


def multipart(parts, boundary=BOUNDARY, close=True):
    """Build a multipart body by hand, so file names reach the server byte for byte.

    ``parts``: ``(name, value)`` for fields, ``(name, filename, content, content_type)`` for files.
    """
    out = b""
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if len(part) == 2:
            name, value = part
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        else:
            name, filename, content, content_type = part
            out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
            out += f"Content-Type: {content_type}\r\n".encode()
            out += b"X-Custom: yes\r\n\r\n" + content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def mp_headers(boundary=BOUNDARY):
    return {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- form fields -----------------------------------------------------------------------------------------
def test_urlencoded_form_fields_typed():
    app = Tachyon()

    @app.post("/login")
    def login(
        username: str = Form(), age: int = Form(), remember: bool = Form(False), note: Optional[str] = Form(None)
    ):
        return {"username": username, "age": age, "remember": remember, "note": note}

    with TachyonTestClient(app) as client:
        response = client.post("/login", data={"username": "ada", "age": "36", "remember": "on"})
        assert response.status_code == 200
        assert response.json() == {"username": "ada", "age": 36, "remember": True, "note": None}
        response = client.post("/login", data={"age": "x"})
        assert_error_shape(response, {422}, "VALIDATION_ERROR")
        errors = response.json()["errors"]
        assert [e["loc"][-1] for e in errors] == ["username", "age"]
        assert errors[0]["type"] == "missing"
        assert errors[1]["type"] != "missing"


def test_form_list_field_from_repeated_keys():
    app = Tachyon()

    @app.post("/f")
    def handler(choice: list[int] = Form()):
        return {"choice": choice}

    with TachyonTestClient(app) as client:
        response = client.post(
            "/f", content=b"choice=1&choice=2&choice=3", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert response.json() == {"choice": [1, 2, 3]}
        multi = client.post("/f", content=multipart([("choice", "4"), ("choice", "5")]), headers=mp_headers())
        assert multi.json() == {"choice": [4, 5]}


def test_form_and_query_lists_convert_alike_over_http():
    """One list converter for both: Optional items, the failing item's index, the list's own constraints."""
    app = Tachyon()

    @app.get("/q")
    def in_query(ids: list[Optional[int]] = Query(), tags: list[str] = Query(max_length=2)):
        return {"ids": ids, "tags": tags}

    @app.post("/f")
    def in_form(ids: list[Optional[int]] = Form(), tags: list[str] = Form(max_length=2)):
        return {"ids": ids, "tags": tags}

    form = {"content-type": "application/x-www-form-urlencoded"}
    with serve(app) as url:
        for source, send in (
            ("query", lambda q: httpx.get(url + "/q?" + q)),
            ("body", lambda q: httpx.post(url + "/f", content=q.encode(), headers=form)),
        ):
            ok = send("ids=1&ids=&ids=null&tags=a")
            assert (ok.status_code, ok.json()) == (200, {"ids": [1, None, None], "tags": ["a"]}), source
            bad = send("ids=1&ids=x&tags=a")
            assert_error_shape(bad, {422}, "VALIDATION_ERROR")
            assert [e["loc"] for e in bad.json()["errors"]] == [[source, "ids", 1]]
            long = send("ids=1&tags=a&tags=b&tags=c")
            assert_error_shape(long, {422}, "VALIDATION_ERROR")
            assert [e["loc"] for e in long.json()["errors"]] == [[source, "tags"]]


def test_multipart_fields_and_file_together():
    app = Tachyon()

    @app.post("/upload")
    async def upload(title: str = Form(), count: int = Form(), file: UploadFile = File()):
        content = await file.read()
        return {
            "title": title,
            "count": count,
            "filename": file.filename,
            "content_type": file.content_type,
            "size": file.size,
            "content": content.decode(),
            "custom": file.headers.get("x-custom"),
        }

    body = multipart([("title", "Report"), ("count", "3"), ("file", "r.txt", b"hello world", "text/plain")])
    with TachyonTestClient(app) as client:
        response = client.post("/upload", content=body, headers=mp_headers())
        assert response.status_code == 200, response.text
        assert response.json() == {
            "title": "Report",
            "count": 3,
            "filename": "r.txt",
            "content_type": "text/plain",
            "size": 11,
            "content": "hello world",
            "custom": "yes",
        }
        # with httpx's own multipart encoder
        response = client.post(
            "/upload",
            data={"title": "T", "count": "1"},
            files={"file": ("a.bin", b"\x00\x01\x02", "application/x-bin")},
        )
        assert response.status_code == 200
        assert response.json()["size"] == 3
        assert response.json()["content_type"] == "application/x-bin"
        bad = client.post("/upload", data={"title": "T", "count": "many"}, files={"file": ("a", b"1", "text/plain")})
        assert_error_shape(bad, {422}, "VALIDATION_ERROR")
        assert [e["loc"][-1] for e in bad.json()["errors"]] == ["count"]


def test_implicit_upload_file_and_missing_file():
    app = Tachyon()

    @app.post("/u")
    async def handler(document: UploadFile):
        return {"filename": document.filename, "data": (await document.read()).decode()}

    with TachyonTestClient(app) as client:
        ok = client.post("/u", files={"document": ("d.txt", b"doc", "text/plain")})
        assert ok.json() == {"filename": "d.txt", "data": "doc"}
        missing = client.post("/u", files={"other": ("d.txt", b"doc", "text/plain")})
        body = assert_error_shape(missing, {422}, "VALIDATION_ERROR")
        assert body["errors"][0]["loc"][-1] == "document"
        assert body["errors"][0]["type"] == "missing"
        # a plain field with the file's name is not a file
        not_a_file = client.post("/u", content=multipart([("document", "text")]), headers=mp_headers())
        assert_error_shape(not_a_file, {422}, "VALIDATION_ERROR")


def test_file_alias():
    app = Tachyon()

    @app.post("/u")
    async def handler(upload: UploadFile = File(alias="attachment")):
        return {"filename": upload.filename}

    with TachyonTestClient(app) as client:
        assert client.post("/u", files={"attachment": ("x.txt", b"1", "text/plain")}).json() == {"filename": "x.txt"}
        assert client.post("/u", files={"upload": ("x.txt", b"1", "text/plain")}).status_code == 422


# --- file names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\x.txt", "x.txt"),
        ("/absolute/path/to/a.png", "a.png"),
        ("C:\\Users\\ada\\report.doc", "report.doc"),
        ("dir/../../../secret.txt", "secret.txt"),
        ("plain.txt", "plain.txt"),
    ],
)
def test_filename_sanitised_against_path_traversal(sent, expected):
    app = Tachyon()

    @app.post("/u")
    async def handler(file: UploadFile):
        return {"filename": file.filename}

    with TachyonTestClient(app) as client:
        response = client.post("/u", content=multipart([("file", sent, b"data", "text/plain")]), headers=mp_headers())
    assert response.status_code == 200, response.text
    assert response.json() == {"filename": expected}


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\x.txt", "x.txt"),
        ("a/b/c.txt", "c.txt"),
        ("..", None),
        ("x.txt", "x.txt"),
    ],
)
def test_upload_file_constructor_sanitises_filename(sent, expected):
    upload = UploadFile(filename=sent)
    try:
        assert upload.filename == expected
        assert upload.filename is None or ("/" not in upload.filename and "\\" not in upload.filename)
    finally:
        upload.file.close()


# --- the UploadFile API ----------------------------------------------------------------------------------
async def test_upload_file_async_api():
    upload = UploadFile(filename="n.txt", size=0, content_type="text/plain")
    assert isinstance(upload.file, tempfile.SpooledTemporaryFile)
    assert upload.content_type == "text/plain"
    await upload.write(b"hello ")
    await upload.write(b"world")
    assert upload.size == 11
    await upload.seek(0)
    assert await upload.read(5) == b"hello"
    assert await upload.read() == b" world"
    await upload.seek(6)
    assert await upload.read() == b"world"
    await upload.close()
    assert upload.file.closed


def test_upload_read_seek_write_inside_endpoint():
    app = Tachyon()

    @app.post("/u")
    async def handler(file: UploadFile):
        first = await file.read(3)
        rest = await file.read()
        await file.seek(0)
        again = await file.read()
        await file.write(b"+more")
        await file.seek(0)
        after_write = await file.read()
        return {"first": first.decode(), "rest": rest.decode(), "again": again.decode(), "after": after_write.decode()}

    with TachyonTestClient(app) as client:
        response = client.post("/u", files={"file": ("f.txt", b"abcdef", "text/plain")})
    assert response.json() == {"first": "abc", "rest": "def", "again": "abcdef", "after": "abcdef+more"}


def test_uploads_are_spooled_and_large_ones_roll_to_disk():
    app = Tachyon()
    seen = {}

    @app.post("/u")
    async def handler(small: UploadFile, large: UploadFile):
        seen["small"] = small.file
        seen["large"] = large.file
        data = await large.read()
        return {"small": small.size, "large": large.size, "large_ok": data == b"z" * (1024 * 1024 + 512)}

    with TachyonTestClient(app) as client:
        response = client.post(
            "/u",
            files={
                "small": ("s.txt", b"tiny", "text/plain"),
                "large": ("l.bin", b"z" * (1024 * 1024 + 512), "application/octet-stream"),
            },
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"small": 4, "large": 1024 * 1024 + 512, "large_ok": True}
    assert isinstance(seen["small"], tempfile.SpooledTemporaryFile)
    assert isinstance(seen["large"], tempfile.SpooledTemporaryFile)
    assert seen["small"]._rolled is False
    assert seen["large"]._rolled is True


UPLOADS = []


def test_uploaded_files_closed_after_request():
    app = Tachyon()
    UPLOADS.clear()

    @app.post("/u")
    async def handler(file: UploadFile, more: list[UploadFile] = File([])):
        UPLOADS.append(file)
        UPLOADS.extend(more)
        return {"closed_during": [f.file.closed for f in [file, *more]]}

    with TachyonTestClient(app) as client:
        response = client.post(
            "/u",
            files=[
                ("file", ("a.txt", b"a", "text/plain")),
                ("more", ("b.txt", b"b", "text/plain")),
                ("more", ("c.txt", b"c", "text/plain")),
            ],
        )
    assert response.json() == {"closed_during": [False, False, False]}
    assert len(UPLOADS) == 3
    assert all(upload.file.closed for upload in UPLOADS)


def test_uploaded_files_closed_when_endpoint_raises():
    app = Tachyon()
    kept = []

    @app.post("/u")
    async def handler(file: UploadFile):
        kept.append(file)
        raise ValueError("boom")

    with TachyonTestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/u", files={"file": ("a.txt", b"a", "text/plain")})
    assert response.status_code == 500
    assert kept and kept[0].file.closed


def test_uploaded_files_closed_after_validation_error():
    app = Tachyon()
    kept = []
    called = []

    def keep(file: UploadFile):
        kept.append(file)
        return file

    @app.post("/u")
    def handler(file: UploadFile = Depends(keep), n: int = Query()):
        called.append(n)
        return {}

    with TachyonTestClient(app) as client:
        response = client.post("/u?n=x", files={"file": ("a.txt", b"a", "text/plain")})
    assert_error_shape(response, {422}, "VALIDATION_ERROR")
    assert called == []
    assert len(kept) == 1 and kept[0].file.closed


def test_several_files_per_field():
    app = Tachyon()

    @app.post("/many")
    async def handler(files: list[UploadFile] = File(...)):
        return {"names": [f.filename for f in files], "data": [(await f.read()).decode() for f in files]}

    with TachyonTestClient(app) as client:
        response = client.post(
            "/many",
            files=[
                ("files", ("one.txt", b"1", "text/plain")),
                ("files", ("two.txt", b"22", "text/plain")),
                ("files", ("three.txt", b"333", "text/plain")),
            ],
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"names": ["one.txt", "two.txt", "three.txt"], "data": ["1", "22", "333"]}
        single = client.post("/many", files={"files": ("solo.txt", b"s", "text/plain")})
        assert single.json() == {"names": ["solo.txt"], "data": ["s"]}
        missing = client.post("/many", files={"other": ("x", b"x", "text/plain")})
        body = assert_error_shape(missing, {422}, "VALIDATION_ERROR")
        assert body["errors"][0]["type"] == "missing"


def test_implicit_list_of_upload_files():
    app = Tachyon()

    @app.post("/many")
    async def handler(images: list[UploadFile]):
        return {"sizes": [f.size for f in images]}

    with TachyonTestClient(app) as client:
        images = [("images", ("a", b"aa", "image/png")), ("images", ("b", b"b", "image/png"))]
        response = client.post("/many", files=images)
    assert response.json() == {"sizes": [2, 1]}


def test_optional_file_defaults_to_none():
    app = Tachyon()

    @app.post("/opt")
    async def handler(name: str = Form(), avatar: Optional[UploadFile] = None, cover: UploadFile | None = File(None)):
        return {
            "name": name,
            "avatar": avatar.filename if avatar else None,
            "cover": cover.filename if cover else None,
        }

    with TachyonTestClient(app) as client:
        assert client.post("/opt", data={"name": "ada"}).json() == {"name": "ada", "avatar": None, "cover": None}
        only_field = client.post("/opt", content=multipart([("name", "ada")]), headers=mp_headers())
        assert only_field.json() == {"name": "ada", "avatar": None, "cover": None}
        with_file = client.post("/opt", data={"name": "ada"}, files={"avatar": ("me.png", b"png", "image/png")})
        assert with_file.json() == {"name": "ada", "avatar": "me.png", "cover": None}


def test_upload_with_background_task_reads_content_in_endpoint():
    app = Tachyon()
    done = []

    def process(name: str, content: bytes) -> None:
        done.append((name, content))

    @app.post("/import")
    async def import_data(file: UploadFile, background_tasks: BackgroundTasks):
        background_tasks.add_task(process, file.filename, await file.read())
        return {"queued": file.filename}

    with TachyonTestClient(app) as client:
        response = client.post("/import", files={"file": ("data.csv", b"1,2,3", "text/csv")})
    assert response.json() == {"queued": "data.csv"}
    assert done == [("data.csv", b"1,2,3")]


# --- invalid multipart -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upload_client():
    app = Tachyon()

    @app.post("/u")
    async def handler(file: UploadFile, title: str = Form("t")):
        return {"filename": file.filename, "title": title}

    with TachyonTestClient(app, raise_server_exceptions=False) as client:
        yield client


def assert_bad_multipart(response, reason: str = "") -> None:
    """The documented answer to a malformed multipart body: 400 ``BAD_REQUEST``, no per-field errors."""
    body = assert_error_shape(response, {400}, "BAD_REQUEST")
    assert body["errors"] == []
    assert body["error"].startswith("Invalid multipart body: " + reason), body["error"]


def test_multipart_without_boundary_is_400(upload_client):
    body = multipart([("file", "a.txt", b"abc", "text/plain")])
    response = upload_client.post("/u", content=body, headers={"content-type": "multipart/form-data"})
    assert_bad_multipart(response, "missing boundary")


def test_truncated_multipart_without_closing_boundary_is_400(upload_client):
    body = multipart([("file", "a.txt", b"abc", "text/plain")], close=False)
    response = upload_client.post("/u", content=body, headers=mp_headers())
    assert_bad_multipart(response, "the closing boundary is missing")
    cut = multipart([("file", "a.txt", b"abcdefgh", "text/plain")])[:-40]
    response = upload_client.post("/u", content=cut, headers=mp_headers())
    assert_bad_multipart(response, "the closing boundary is missing")


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage without any boundary",
        b"--" + BOUNDARY.encode() + b"\r\nno headers end",
        b'--wrong-boundary\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--wrong-boundary--\r\n',
        b"--"
        + BOUNDARY.encode()
        + b"\r\nContent-Type: text/plain\r\n\r\nnameless\r\n--"
        + BOUNDARY.encode()
        + b"--\r\n",
    ],
)
def test_garbage_multipart_is_400_not_500(upload_client, raw):
    response = upload_client.post("/u", content=raw, headers=mp_headers())
    assert_bad_multipart(response)


def test_form_param_with_wrong_content_type_is_422_content_type(upload_client):
    response = upload_client.post("/u", json={"file": "x"})
    errors = assert_validation_error(response, [["body"]])
    assert errors[0]["type"] == "content_type"


# --- size limits -----------------------------------------------------------------------------------------
def limited_app():
    app = Tachyon(max_body_size=1000)
    calls = []

    @app.post("/form")
    def form(text: str = Form()):
        calls.append(text)
        return {"n": len(text)}

    @app.post("/upload")
    async def upload(file: UploadFile):
        calls.append(file.filename)
        return {"size": file.size}

    return app, calls


def test_form_over_limit_is_413():
    app, calls = limited_app()
    with TachyonTestClient(app) as client:
        assert client.post("/form", data={"text": "a" * 100}).json() == {"n": 100}
        response = client.post("/form", data={"text": "a" * 2000})
        assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert calls == ["a" * 100]


def test_upload_over_limit_is_413():
    app, calls = limited_app()
    with TachyonTestClient(app) as client:
        assert client.post("/upload", files={"file": ("s.bin", b"s" * 100, "x/y")}).json() == {"size": 100}
        response = client.post("/upload", files={"file": ("b.bin", b"b" * 5000, "x/y")})
        assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert calls == ["s.bin"]


def test_chunked_form_and_upload_over_limit_are_413():
    app, calls = limited_app()
    body = multipart([("file", "big.bin", b"q" * 3000, "application/octet-stream")])
    sent = []

    def record(request):
        sent.append(dict(request.headers))

    with TachyonTestClient(app, event_hooks={"request": [record]}) as client:
        upload = client.post(
            "/upload", content=iter([body[i : i + 256] for i in range(0, len(body), 256)]), headers=mp_headers()
        )
        form = client.post(
            "/form",
            content=iter([b"text=", b"a" * 700, b"a" * 700]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert all("content-length" not in headers for headers in sent)
    assert_error_shape(upload, {413}, "PAYLOAD_TOO_LARGE")
    assert_error_shape(form, {413}, "PAYLOAD_TOO_LARGE")
    assert calls == []


async def test_async_chunked_upload_over_limit_is_413():
    app, calls = limited_app()
    body = multipart([("file", "big.bin", b"q" * 3000, "application/octet-stream")])

    async def chunks():
        for i in range(0, len(body), 200):
            yield body[i : i + 200]

    async with create_client(app) as client:
        response = await client.post("/upload", content=chunks(), headers=mp_headers())
    assert_error_shape(response, {413}, "PAYLOAD_TOO_LARGE")
    assert calls == []


def test_bytes_file_parameter_receives_the_content():
    from tachyon_api import File, Tachyon
    from tachyon_api.testing import TachyonTestClient

    app = Tachyon()

    @app.post("/raw")
    def raw(data: bytes = File()):
        return {"size": len(data), "head": data[:5].decode()}

    with TachyonTestClient(app) as client:
        response = client.post("/raw", files={"data": ("a.bin", b"hello world")})
    assert response.json() == {"size": 11, "head": "hello"}
