from tests.conftest import AppClient


def test_me_returns_the_signed_in_user(client_a: AppClient, user_a) -> None:
    client_a.login_as(user_a)
    response = client_a.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"
    assert response.json()["tenant"] == "tenant-a"
