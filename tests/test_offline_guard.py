import socket

import pytest


def test_network_access_fails_loudly():
    with pytest.raises(RuntimeError, match="offline"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
