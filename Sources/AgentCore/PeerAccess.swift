import Foundation
import Hummingbird
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The request context: Hummingbird's core context plus the connection, whose peer credentials
/// the control endpoints check.
struct AgentRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The connecting process as the kernel saw it at connect time (`SO_PEERCRED`); same layout as
/// `struct ucred`.
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32 = 0
    var uid: UInt32 = .max
    var gid: UInt32 = .max

    /// Nil when the channel is not a Unix socket whose peer the kernel can name.
    static func of(_ channel: any Channel) async -> PeerCredentials? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        return try? await provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED)).get()
    }
}

/// Who may use the control endpoints (rollback; later learn, drift reset, deploy): root,
/// agentd's own user, and members of `api.admin_group` — the group's primary members (gid) and
/// those listed in the group database. Inference, feedback and status need only the socket.
struct AdminPolicy: Sendable {
    let adminGroup: String

    enum Decision: Equatable {
        case allowed
        case refused(String)
    }

    func decide(_ peer: PeerCredentials?) -> Decision {
        guard let peer else { return .refused("the peer's credentials could not be read") }
        if peer.uid == 0 || peer.uid == geteuid() { return .allowed }
        // An unmapped peer (a user namespace, e.g. the unit's PrivateUsers=) is nobody in particular.
        guard peer.uid != Self.overflowID, peer.gid != Self.overflowID else {
            return .refused("the peer's user is not visible to agentd (it appears as the overflow uid \(Self.overflowID))")
        }
        let who = "uid \(peer.uid)" + (Self.userName(peer.uid).map { " (\($0))" } ?? "")
        guard !adminGroup.isEmpty else {
            return .refused("\(who) is neither root nor agentd's user, and api.admin_group is not set")
        }
        guard let group = Self.group(adminGroup) else {
            return .refused("api.admin_group '\(adminGroup)' does not exist on this system")
        }
        if peer.gid == group.gid { return .allowed }
        if let name = Self.userName(peer.uid), group.members.contains(name) { return .allowed }
        return .refused("\(who) is not root, not agentd's user and not in api.admin_group '\(adminGroup)'")
    }

    static let overflowID: UInt32 = 65534

    /// getpwuid_r: the non-reentrant getpwuid shares one static buffer between threads.
    static func userName(_ uid: UInt32) -> String? {
        withGrowingBuffer { buffer in
            var pwd = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let rc = getpwuid_r(uid, &pwd, &buffer, buffer.count, &result)
            return (rc, result == nil ? nil : pwd.pw_name.map { String(cString: $0) })
        }
    }

    static func group(_ name: String) -> (gid: UInt32, members: [String])? {
        withGrowingBuffer { buffer in
            var grp = Glibc.group()
            var result: UnsafeMutablePointer<Glibc.group>?
            let rc = getgrnam_r(name, &grp, &buffer, buffer.count, &result)
            guard rc == 0, result != nil else { return (rc, nil) }
            var members: [String] = []
            if var p = grp.gr_mem {
                while let m = p.pointee {
                    members.append(String(cString: m))
                    p += 1
                }
            }
            return (0, (grp.gr_gid, members))
        }
    }

    /// Runs a `get*_r` lookup, doubling its buffer while it answers ERANGE (large groups from a
    /// directory service), up to 16 MiB.
    private static func withGrowingBuffer<T>(_ lookup: (inout [CChar]) -> (Int32, T?)) -> T? {
        var buffer = [CChar](repeating: 0, count: 16384)
        while true {
            let (rc, value) = lookup(&buffer)
            guard rc == ERANGE, buffer.count < 16 << 20 else { return value }
            buffer = [CChar](repeating: 0, count: buffer.count * 2)
        }
    }
}
