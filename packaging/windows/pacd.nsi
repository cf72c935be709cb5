; Per-user installer for pacd on Windows: no administrator rights, installs to
; %LOCALAPPDATA%\Programs\pacd, starts the tray at login through the current
; user's Run key (the tray's "Start at login" toggles the same value, see
; pacd/autostart/windows.py), and uninstalls by stopping the tray and the daemon,
; removing that value and the files. The owner's data (%LOCALAPPDATA%\pacd) is
; kept.
;
;   makensis -DVERSION=0.1.0 -DDIST=<dir> -DOUTFILE=<exe> packaging\windows\pacd.nsi
;
; DIST holds the PyInstaller one-dir bundles: DIST\pacd\pacd.exe (daemon and
; CLI) and DIST\pacd-tray\pacd-tray.exe (packaging/windows/build.ps1 makes it).

Unicode true
Target amd64-unicode
RequestExecutionLevel user
SetCompressor /SOLID lzma

!ifndef VERSION
  !error "define VERSION (-DVERSION=x.y.z)"
!endif
!ifndef DIST
  !error "define DIST, the folder with the pacd and pacd-tray bundles"
!endif
!ifndef OUTFILE
  !define OUTFILE "pacd-${VERSION}-win64.exe"
!endif

; the value pacd/autostart/windows.py reads and writes: keep the names in step
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define RUN_VALUE "pacd"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\pacd"

Name "pacd"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\pacd"
ShowInstDetails nevershow
ShowUninstDetails nevershow

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

; Stops this user's tray and daemon (taskkill filtered to our own user name, so
; another user's pacd on the same machine is left alone).
!macro StopPacd
  ReadEnvStr $1 USERNAME
  nsExec::Exec '"$SYSDIR\taskkill.exe" /F /FI "USERNAME eq $1" /IM pacd-tray.exe'
  Pop $0
  nsExec::Exec '"$SYSDIR\taskkill.exe" /F /FI "USERNAME eq $1" /IM pacd.exe'
  Pop $0
!macroend

Section "pacd"
  !insertmacro StopPacd
  SetOutPath "$INSTDIR"
  File /r "${DIST}\*"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  WriteRegStr HKCU "${RUN_KEY}" "${RUN_VALUE}" '"$INSTDIR\pacd-tray\pacd-tray.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "pacd"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
  CreateShortCut "$SMPROGRAMS\pacd.lnk" "$INSTDIR\pacd-tray\pacd-tray.exe"
SectionEnd

Section "Uninstall"
  !insertmacro StopPacd
  DeleteRegValue HKCU "${RUN_KEY}" "${RUN_VALUE}"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  Delete "$SMPROGRAMS\pacd.lnk"
  RMDir /r "$INSTDIR\pacd"
  RMDir /r "$INSTDIR\pacd-tray"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
SectionEnd
