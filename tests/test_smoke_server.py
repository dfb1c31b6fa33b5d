import httpx

from tachyon_api import Tachyon

from .conftest import serve


def test_hello_over_real_http():
    app = Tachyon()

    @app.get("/hello")
    async def hello():
        return {"message": "Hello, World!"}

    with serve(app) as url:
        response = httpx.get(f"{url}/hello")
    assert response.status_code == 200
    assert response.json() == {"message": "Hello, World!"}


def test_signup_example_process(serve_process):
    source = (__import__("pathlib").Path(__file__).parent.parent / "examples" / "signup.py").read_text()
    server = serve_process(source)
    response = httpx.post(f"{server.url}/signup")
    assert response.json() == {"message": "User created"}
    server.terminate()
    # uvicorn re-raises the signal after a graceful shutdown, so the exit status is -SIGTERM.
    assert server.wait() in (0, -15)
    output = server.output()
    assert "Sending email to new@user.com: Welcome!" in output
    assert "Application shutdown complete" in output
