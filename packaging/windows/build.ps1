# Build dist\pacd-<version>-win64.exe: the PyInstaller bundles of the daemon/CLI
# and the tray, packed by the per-user NSIS installer (packaging\windows\pacd.nsi).
# Meant for a Windows machine with Python 3.11+ and NSIS (makensis on PATH);
# it has not been run on this project's Linux machines (see README).
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1
#
# $env:SIGN_CERT_THUMBPRINT set: the bundles' executables and the installer are
# Authenticode-signed with that certificate (signtool from the Windows SDK).
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path "$PSScriptRoot\..\..").Path
$Version = (Select-String -Path "$Root\pacd\__init__.py" -Pattern '__version__ = "([^"]+)"').Matches[0].Groups[1].Value
$Work = Join-Path ([System.IO.Path]::GetTempPath()) ("pacd-build-" + [guid]::NewGuid())
New-Item -ItemType Directory -Path $Work | Out-Null
try {
    python -m venv "$Work\venv"
    & "$Work\venv\Scripts\python.exe" -m pip install -q "$Root[gui,freeze]"
    if ($LASTEXITCODE -ne 0) { throw "pip install failed" }
    foreach ($spec in "pacd", "pacd-tray") {
        & "$Work\venv\Scripts\pyinstaller.exe" --noconfirm --log-level WARN `
            --distpath "$Work\dist" --workpath "$Work\build" "$Root\packaging\freeze\$spec.spec"
        if ($LASTEXITCODE -ne 0) { throw "pyinstaller $spec failed" }
    }
    # the frozen CLI must run before it is packed
    & "$Work\dist\pacd\pacd.exe" --version
    if ($LASTEXITCODE -ne 0) { throw "the frozen pacd.exe does not run" }
    if ($env:SIGN_CERT_THUMBPRINT) {
        signtool sign /sha1 $env:SIGN_CERT_THUMBPRINT /fd sha256 /tr http://timestamp.digicert.com /td sha256 `
            "$Work\dist\pacd\pacd.exe" "$Work\dist\pacd-tray\pacd-tray.exe"
        if ($LASTEXITCODE -ne 0) { throw "signing the bundles failed" }
    }
    New-Item -ItemType Directory -Force -Path "$Root\dist" | Out-Null
    $Out = "$Root\dist\pacd-$Version-win64.exe"
    makensis -V2 -WX "-DVERSION=$Version" "-DDIST=$Work\dist" "-DOUTFILE=$Out" "$Root\packaging\windows\pacd.nsi"
    if ($LASTEXITCODE -ne 0) { throw "makensis failed" }
    if ($env:SIGN_CERT_THUMBPRINT) {
        signtool sign /sha1 $env:SIGN_CERT_THUMBPRINT /fd sha256 /tr http://timestamp.digicert.com /td sha256 $Out
        if ($LASTEXITCODE -ne 0) { throw "signing the installer failed" }
    }
    Write-Output "build.ps1: $Out"
} finally {
    Remove-Item -Recurse -Force $Work
}
