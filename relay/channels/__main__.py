"""``python -m relay.channels``: print the README's relay table from the registry."""

from relay.channels import relay_table

print(relay_table(), end="")
