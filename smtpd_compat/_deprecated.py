"""The ``__server``-style SMTPChannel aliases that smtpd keeps for old code.

Before Python 3.3 the channel kept its state in name-mangled attributes
(``self.__server`` is ``_SMTPChannel__server``).  smtpd still answers to those
names, with a DeprecationWarning pointing at the public attribute.
"""

import warnings

# old private name -> public attribute
ALIASES = {
    "__server": "smtp_server",
    "__line": "received_lines",
    "__state": "smtp_state",
    "__greeting": "seen_greeting",
    "__mailfrom": "mailfrom",
    "__rcpttos": "rcpttos",
    "__data": "received_data",
    "__fqdn": "fqdn",
    "__peer": "peer",
    "__conn": "conn",
    "__addr": "addr",
}


def deprecated_alias(old: str, new: str) -> property:
    """A property that forwards *old* to attribute *new*, warning on each use."""

    def get(self):
        warnings.warn(
            "Access to %s attribute on SMTPChannel is deprecated, "
            "use '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        return getattr(self, new)

    def set(self, value):
        warnings.warn(
            "Setting %s attribute on SMTPChannel is deprecated, "
            "set '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        setattr(self, new, value)

    return property(get, set, doc="Deprecated alias of %r." % new)


def install_aliases(cls: type) -> type:
    """Class decorator: add every alias under its name-mangled attribute name."""
    for old, new in ALIASES.items():
        setattr(cls, "_%s%s" % (cls.__name__, old), deprecated_alias(old, new))
    return cls
