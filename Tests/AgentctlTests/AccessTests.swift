import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Who may do what, with real users and groups (made for the test, as root): the socket group
/// may infer, send feedback and read status; only root, agentd's user and api.admin_group may
/// roll back; everyone else cannot reach the socket.
@Suite(.serialized) struct AccessTests {
    let tag = String(UInt32.random(in: 0...UInt32.max) % 100_000)
    var socketGroup: String { "eatsock\(tag)" }
    var adminGroup: String { "eatadm\(tag)" }
    var user: String { "eatuser\(tag)" }
    var admin: String { "eatadmin\(tag)" }
    var outsider: String { "eatout\(tag)" }
    /// agentd runs as this user (as under the unit), so root, it and the admin group are three different peers.
    var daemonUser: String { "eatd\(tag)" }

    func makeAccounts() throws {
        for g in [socketGroup, adminGroup] {
            let r = shell("groupadd \(g)")
            try #require(r.status == 0, "groupadd: \(r.output)")
        }
        for (u, groups) in [(user, socketGroup), (admin, "\(socketGroup),\(adminGroup)"), (outsider, ""), (daemonUser, socketGroup)] {
            let r = shell("useradd --no-create-home --shell /usr/sbin/nologin \(groups.isEmpty ? "" : "--groups \(groups)") \(u)")
            try #require(r.status == 0, "useradd: \(r.output)")
        }
    }

    func removeAccounts() {
        for u in [user, admin, outsider, daemonUser] { shell("userdel \(u)") }
        for g in [socketGroup, adminGroup] { shell("groupdel \(g)") }
    }

    /// agentctl as `user`, with that user's groups.
    func agentctl(as user: String, _ args: [String]) -> (status: Int32, output: String) {
        shell("setpriv --reuid=\(user) --regid=\(user) --init-groups '\(Agentctl.path)' " + args.map { "'\($0)'" }.joined(separator: " "))
    }

    @Test func theSocketGroupInfersOnlyAdminsRollBack() throws {
        guard requireRoot("access test (users and groups)") else { return }
        try makeAccounts()
        defer { removeAccounts() }
        let dir = temporaryDirectory("access")
        chmod(dir, 0o755)
        shell("chown \(daemonUser) '\(dir)'")
        let agent = try AgentdProcess(config: "[api]\nadmin_group = \"\(adminGroup)\"", dir: dir,
                                      launcher: ["/usr/bin/setpriv", "--reuid=\(daemonUser)", "--regid=\(daemonUser)", "--init-groups"],
                                      socketGroup: socketGroup)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        // The socket belongs to the socket group, mode 0660.
        var st = stat()
        stat(agent.socket, &st)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(getgrgid(st.st_gid).map { String(cString: $0.pointee.gr_name) } == socketGroup)

        let socket = ["--socket", agent.socket]
        // A socket-group member: inference, feedback and status yes; rollback no.
        let infer = agentctl(as: user, ["infer", "--input", Agentctl.digits, "--json"] + socket)
        #expect(infer.status == 0, "\(infer.output.prefix(500))")
        let status = agentctl(as: user, ["status", "--json"] + socket)
        #expect(status.status == 0 && status.output.contains("\"serving\""), "\(status.output)")
        let refused = agentctl(as: user, ["model", "rollback"] + socket)
        #expect(refused.status == 1, "\(refused.output)")
        #expect(refused.output.contains("control operation") && refused.output.contains(user), "\(refused.output)")
        // Reading drift is not control; resetting it is.
        #expect(agentctl(as: user, ["drift", "--json"] + socket).status == 0)
        let reset = agentctl(as: user, ["drift", "reset"] + socket)
        #expect(reset.status == 1 && reset.output.contains("control operation"), "\(reset.output)")
        let adminReset = agentctl(as: admin, ["drift", "reset"] + socket)
        #expect(adminReset.status == 0, "\(adminReset.output)")
        // An admin-group member passes the check (and is then told there is nothing older).
        let allowed = agentctl(as: admin, ["model", "rollback"] + socket)
        #expect(allowed.status == 1 && allowed.output.contains("nothing to roll back to"), "\(allowed.output)")
        // Root and agentd's own user pass too.
        #expect(try agent.agentctl(["model", "rollback"]).stderr.contains("nothing to roll back to"))
        let itself = agentctl(as: daemonUser, ["model", "rollback"] + socket)
        #expect(itself.status == 1 && itself.output.contains("nothing to roll back to"), "\(itself.output)")
        // Feedback is not a control operation.
        let id = try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).results[0].id
        let feedback = agentctl(as: user, ["feedback", "--id", id, "--label", "0"] + socket)
        #expect(feedback.status == 0, "\(feedback.output)")
        // Not in the socket group: cannot reach the socket at all.
        let outside = agentctl(as: outsider, ["status"] + socket)
        #expect(outside.status == 3, "\(outside.output)")
        // The refusal reached nobody's registry.
        #expect(try agent.client.models().models.map(\.version) == [1])
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }

    @Test func aMissingSocketGroupStopsTheStartAsAConfigurationError() throws {
        let agent = try AgentdProcess(socketGroup: "no-such-group-\(tag)")
        #expect(agent.waitForExit() == 78, "\(agent.log)")
        #expect(agent.log.contains("agent.socket_group: group 'no-such-group-\(tag)' does not exist"), "\(agent.log)")
    }
}
