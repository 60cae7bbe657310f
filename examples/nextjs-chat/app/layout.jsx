import "./globals.css";

export const metadata = { title: "Keel · Next.js chat", description: "useChat against Keel's gateway" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
