"""The seed's first example, unchanged: run it with `tachyon run examples.signup:app`."""

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks

app = Tachyon()


def send_email(to: str, subject: str):
    """Tarea que se ejecuta en background."""
    print(f"Sending email to {to}: {subject}")
    # Lógica de envío...


@app.post("/signup")
def signup(background_tasks: BackgroundTasks):
    # Crear usuario...
    user_email = "new@user.com"

    # Programar email para después
    background_tasks.add_task(send_email, user_email, "Welcome!")

    # Respuesta inmediata (email se envía después)
    return {"message": "User created"}
