"""The seed's first example (its comments translated): run it with `tachyon run examples.signup:app`."""

from tachyon_api import Tachyon
from tachyon_api.background import BackgroundTasks

app = Tachyon()


def send_email(to: str, subject: str):
    """A task that runs in the background."""
    print(f"Sending email to {to}: {subject}")
    # Sending logic...


@app.post("/signup")
def signup(background_tasks: BackgroundTasks):
    # Create the user...
    user_email = "new@user.com"

    # Schedule the email for later
    background_tasks.add_task(send_email, user_email, "Welcome!")

    # Immediate response (the email is sent afterwards)
    return {"message": "User created"}
