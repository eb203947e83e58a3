"""Video consultations: signalling for peer-to-peer WebRTC calls (video issue)."""

__all__: list[str] = []
