"""Custom classes and functions a saved file may name (issue 13); re-exported by
``pynn.saving``. Imports nothing of pynn, so layers and losses can use it."""

# -- custom objects (issue 13): classes and functions a file may name -------------------------
# A file names a custom layer, model, loss, metric or function by the key it was registered
# under; loading looks that key up here or in ``custom_objects``, so it only ever runs code the
# program itself defined. Nothing of the object's code is stored.
_REGISTERED = {}
_custom_scopes = []


def register_serializable(package="Custom", name=None):
    """Keras's decorator: ``@pynn.saving.register_serializable(package, name)`` lets saved
    files name a custom class or function as ``"package>name"``."""
    if not isinstance(package, str) or ">" in package:
        raise ValueError(f"register_serializable: package must be a string without '>', got "
                         f"{package!r}")

    def decorator(obj):
        key = f"{package}>{name or obj.__name__}"
        previous = _REGISTERED.get(key)
        if previous is not None and previous is not obj and getattr(
                previous, "__qualname__", None) != getattr(obj, "__qualname__", None):
            raise ValueError(f"register_serializable: {key!r} is already registered to "
                             f"{previous!r}")
        _REGISTERED[key] = obj
        obj._pynn_serializable_name = key
        return obj

    return decorator


def get_registered_name(obj):
    return getattr(obj, "_pynn_serializable_name", None) or getattr(obj, "__name__", None)


class custom_object_scope:
    """``with custom_object_scope({"MyLayer": MyLayer}): load_model(path)``: names a file
    may use besides the registered ones, as ``custom_objects=`` does for one call."""

    def __init__(self, objects):
        self.objects = dict(objects or {})

    def __enter__(self):
        _custom_scopes.append(self.objects)
        return self

    def __exit__(self, *exc):
        _custom_scopes.remove(self.objects)


def serializable_name(obj, what):
    """The name a file stores for ``obj`` (a custom class or function); an error saying how
    to make it saveable when it was never registered."""
    key = getattr(obj, "_pynn_serializable_name", None)
    if key is not None and _REGISTERED.get(key) is obj:
        return key
    for scope in reversed(_custom_scopes):
        for k, v in scope.items():
            if v is obj:
                return k
    label = getattr(obj, "__qualname__", repr(obj))
    raise ValueError(f"save: cannot save the {what} {label!r}: pynn files never hold Python "
                     f"code, so it must be registered by name; decorate it with "
                     f"@pynn.saving.register_serializable(package='...') and load with it "
                     f"defined (or pass custom_objects={{{label.split('.')[-1]!r}: ...}})")


def lookup_serializable(name, what):
    """The registered (or ``custom_objects``) class or function a file names; never an
    import, never code read from the file."""
    if isinstance(name, str):
        for scope in reversed(_custom_scopes):
            if name in scope:
                return scope[name]
            short = name.split(">")[-1]
            if short in scope:
                return scope[short]
        if name in _REGISTERED:
            return _REGISTERED[name]
    raise ValueError(f"unknown {what} {name!r}: register it with "
                     f"@pynn.saving.register_serializable or pass custom_objects= to the "
                     f"loader (known: {sorted(_REGISTERED)})")


def lookup_custom(identifier, base):
    """A string naming a registered/custom subclass of ``base`` (an instance of it) or a
    function; None when it names nothing known."""
    if not isinstance(identifier, str):
        return None
    try:
        obj = lookup_serializable(identifier, "object")
    except ValueError:
        return None
    if isinstance(obj, type) and issubclass(obj, base):
        return obj()
    return obj if isinstance(obj, base) else None


def from_saved_config(identifier, builtins, wrapper, base, what):
    """What every ``get()`` does with a saved ``{"class_name", "config"}`` dict or a
    registered name: a built-in class (``builtins`` maps class names to classes), the
    function ``wrapper``, or a registered/custom subclass of ``base``; None when nothing
    matches (the caller raises with its own list of names)."""
    if isinstance(identifier, dict):
        name, config = identifier.get("class_name"), identifier.get("config", {})
        if name in builtins:
            return builtins[name].from_config(config)
        if name == wrapper.__name__:
            return wrapper.from_config(config)
        if isinstance(name, str):
            cls = lookup_serializable(name, what)
            if isinstance(cls, type) and issubclass(cls, base):
                return cls.from_config(config)
    return lookup_custom(identifier, base)


def to_saved_config(obj, builtins, wrapper, what):
    """``{"class_name", "config"}`` for a built-in object, the function ``wrapper``, or a
    registered custom class (an error saying how to register one otherwise)."""
    cls = type(obj)
    name = cls.__name__
    if builtins.get(name) is not cls and cls is not wrapper:
        name = serializable_name(cls, what)
    return {"class_name": name, "config": obj.get_config()}
