import ArgumentParser
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Switchboard

/// The page and the browser client, read from disk on every request (they are small, and an
/// edit shows on the next reload). Only the paths listed in `addRoutes` are served: nothing
/// else on disk is reachable. The client's modules are the `.js` files next to `--client-js`,
/// listed at startup.
struct StaticFiles: Sendable {
    let publicDir: URL
    let clientJS: URL

    /// `--public-dir` / `--client-js` if given; else `Examples/Chat/Public` and
    /// `Clients/js/switchboard.js` under the working directory, else in the source tree this
    /// binary was built from.
    static func locate(publicDir: String?, clientJS: String?, sourceFile: String = #filePath) throws -> StaticFiles {
        let cwd = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        // …/Examples/Chat/Sources/SwitchboardChat/StaticFiles.swift → the repository root
        let repo = URL(fileURLWithPath: sourceFile).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        func find(_ given: String?, _ relative: String, option: String, isDirectory: Bool) throws -> URL {
            let candidates =
                given.map { [URL(fileURLWithPath: $0, relativeTo: cwd)] }
                ?? [cwd.appendingPathComponent(relative), repo.appendingPathComponent(relative)]
            for url in candidates {
                var dir: ObjCBool = false
                if FileManager.default.fileExists(atPath: url.path, isDirectory: &dir), dir.boolValue == isDirectory {
                    return url.standardizedFileURL
                }
            }
            throw ValidationError("\(option): not found (looked at \(candidates.map(\.path).joined(separator: ", ")))")
        }
        let files = StaticFiles(
            publicDir: try find(publicDir, "Examples/Chat/Public", option: "--public-dir", isDirectory: true),
            clientJS: try find(clientJS, "Clients/js/switchboard.js", option: "--client-js", isDirectory: false)
        )
        for name in ["index.html", "app.js", "style.css"]
        where !FileManager.default.fileExists(atPath: files.publicDir.appendingPathComponent(name).path) {
            throw ValidationError("--public-dir \(files.publicDir.path) has no \(name)")
        }
        return files
    }

    /// A client module name: `[a-z0-9-]+\.js`, a plain file name (no path, no dot file).
    static func isClientModule(_ name: String) -> Bool {
        guard name.hasSuffix(".js") else { return false }
        let stem = name.utf8.dropLast(3)
        return !stem.isEmpty
            && stem.allSatisfy { byte in
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                    || byte == UInt8(ascii: "-")
            }
    }

    func addRoutes(to router: Router<SwitchboardRequestContext>) {
        var pages: [(String, URL, String)] = [
            ("/", self.publicDir.appendingPathComponent("index.html"), "text/html; charset=utf-8"),
            ("/index.html", self.publicDir.appendingPathComponent("index.html"), "text/html; charset=utf-8"),
            ("/app.js", self.publicDir.appendingPathComponent("app.js"), "text/javascript; charset=utf-8"),
            ("/style.css", self.publicDir.appendingPathComponent("style.css"), "text/css; charset=utf-8"),
            ("/js/switchboard.js", self.clientJS, "text/javascript; charset=utf-8"),
            // The page links the SVG; browsers that ask for /favicon.ico anyway get it too.
            ("/favicon.svg", self.publicDir.appendingPathComponent("favicon.svg"), "image/svg+xml"),
            ("/favicon.ico", self.publicDir.appendingPathComponent("favicon.svg"), "image/svg+xml"),
        ]
        // switchboard.js imports its sibling modules (`./frame.js`…), which the browser asks for
        // as /js/frame.js…: serve every client module directly in its directory.
        let clientDir = self.clientJS.deletingLastPathComponent()
        let modules = (try? FileManager.default.contentsOfDirectory(atPath: clientDir.path)) ?? []
        for name in modules.sorted() where name != "switchboard.js" && Self.isClientModule(name) {
            pages.append(("/js/" + name, clientDir.appendingPathComponent(name), "text/javascript; charset=utf-8"))
        }
        for (path, file, type) in pages {
            router.get(RouterPath(path)) { _, _ -> Response in
                guard let data = FileManager.default.contents(atPath: file.path) else { throw HTTPError(.notFound) }
                return Response(
                    status: .ok,
                    headers: [
                        .contentType: type,
                        .cacheControl: "no-cache",
                        // Nothing from elsewhere: no CDN, no inline script, sockets to this origin only.
                        .contentSecurityPolicy: "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'",
                        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
                    ],
                    body: .init(byteBuffer: ByteBuffer(bytes: data))
                )
            }
        }
    }
}
