// Status codes, errors, metadata and the message protocol are part of ShoalRPC's API: users import one module.
@_exported public import ProtoRuntime
@_exported public import RPCCore
